"""Fixtures: the fake (hash) embedder and indexes built with it wherever the model is not the subject; the real,
local model, one session index built with it and its servers for the end-to-end tests (marked `slow`); a real
`qa serve` on a free loopback port (`live_server`)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from typing import NamedTuple

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "seeds")
SEED_FILE = os.path.join(SEEDS, "000_17ba8289838f2219.txt")
SQUAD = os.path.join(ROOT, "eval", "squad-dev")
SQUAD_SMALL = os.path.join(ROOT, "eval", "squad-small")
QA = os.path.join(os.path.dirname(sys.executable), "qa")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
REAL_MODEL_FIXTURES = ("embedder", "torch_embedder", "onnx_embedder")  # every real-model index needs one


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that loads the real model without the `slow` marker: `make test-fast` must not pay for it."""
    unmarked = [item.nodeid for item in items if item.get_closest_marker("slow") is None
                and any(name in getattr(item, "fixturenames", ()) for name in REAL_MODEL_FIXTURES)]
    if unmarked:
        raise pytest.UsageError("tests on the real model need @pytest.mark.slow: " + ", ".join(unmarked))


# --- HTTP and a real `qa serve` ------------------------------------------------------------------------------

class Response(NamedTuple):
    """One HTTP answer: HTTP errors are answers too, not exceptions."""

    status: int
    headers: Message
    body: bytes


def http(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None,
         timeout: float = 30) -> Response:
    """The status, headers and body of one request to `url`."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read())


def wait_for(cond, secs: float = 15.0) -> bool:
    """Whether `cond()` comes true within `secs` seconds (asked every 50 ms)."""
    deadline = time.time() + secs
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@contextlib.contextmanager
def serve(index_dir: str, env: dict | None = None, *args: str, logs: list | None = None,
          verbose: bool = False) -> Iterator[str]:
    """A real `qa serve` of `index_dir` on a free loopback port, up once /healthz answers; yields its base URL.
    `args` such as ("--workers", "2"); `logs`, a list, receives the server's log when it stops; `verbose`: `qa -v`.

    Its log goes to a file (a chatty server never blocks on a pipe) and must hold no traceback when it stops."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="qa-serve-", suffix=".log", delete=False)
    # the server appends through its own descriptor: reading `log` here moves no offset it writes at
    with open(log.name, "ab") as out:
        p = subprocess.Popen([QA, *(["-v"] if verbose else []), "serve", "--index-dir", index_dir, "--port",
                              str(port), *args],
                             env={**ENV, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            with contextlib.suppress(OSError):
                if http(base + "/healthz", timeout=5).status == 200:
                    break
            log.seek(0)
            assert p.poll() is None and time.time() < deadline, "qa serve did not come up: " + log.read()[-2000:]
            time.sleep(0.05)
        yield base
    finally:
        _stop(p)
        log.seek(0)
        text = log.read()
        log.close()
        os.unlink(log.name)
        if logs is not None:
            logs.append(text)
    assert "Traceback" not in text, "the server logged an exception:\n" + text[-3000:]


@pytest.fixture(scope="session")
def live_server():
    """`serve`: `with live_server(index_dir, env, *args) as base:` runs a real `qa serve` for the block."""
    return serve


def copy_index(src: str, dst: str) -> str:
    """A private copy of a built index (without its writer lock), for tests that write to it."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".write.lock"))
    return dst


# --- two small articles, as JSONL --------------------------------------------------------------------------

ZEBRA = {"id": "lc-zebra", "title": "Zebra crossings in Quokka Town",
         "paragraphs": ["The council of Quokka Town painted eleven new zebra crossings near the harbour in March.",
                        "Residents said the crossings made the walk to the ferry safer for children."]}
WOMBAT = {"id": "lc-wombat", "title": "Wombat bridge opens in Platypus Bay",
          "paragraphs": ["A timber footbridge for wombats opened over the creek in Platypus Bay on Tuesday.",
                         "Rangers counted forty wombats crossing the bridge during its first night."]}


def write_jsonl(directory, *articles) -> str:
    """The articles (dicts) as one JSONL file in `directory`, named after their ids."""
    path = os.path.join(str(directory), "-".join(a["id"] for a in articles) + ".jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for a in articles:
            f.write(json.dumps(a) + "\n")
    return path


# --- the fake embedder and the seed index built with it ------------------------------------------------------

@pytest.fixture()
def fake_embedder():
    """The deterministic hash embedder (model name "hash"; `qa build --model hash` builds with it)."""
    from qa.embed import HashEmbedder

    return HashEmbedder()


@pytest.fixture(scope="session")
def fake_seed_index_dir(tmp_path_factory):
    """The seed article built with the hash embedder, shared by the tests that only read it."""
    from qa.embed import HashEmbedder
    from qa.index import build_index

    path = str(tmp_path_factory.mktemp("fake-seed") / "index")
    build_index([SEEDS], path, embedder=HashEmbedder())
    return path


@pytest.fixture()
def fake_seed_copy(tmp_path, fake_seed_index_dir):
    """A private copy of the hash-built seed index, for tests that write to it."""
    return copy_index(fake_seed_index_dir, str(tmp_path / "index"))


def make_app(index_dir: str, embedder, **config):
    """The Flask app on `index_dir` with `embedder` already loaded (`config`: other Config fields)."""
    from qa.config import Config
    from qa.service import Engine
    from qa.web import create_app

    cfg = Config(index_dir=index_dir, **config)
    return create_app(cfg, engine=Engine(cfg, embedder=embedder))


@pytest.fixture(scope="session")
def fake_app(fake_seed_index_dir):
    """The Flask app on the hash-built seed index."""
    from qa.embed import HashEmbedder

    return make_app(fake_seed_index_dir, HashEmbedder())


@pytest.fixture()
def fake_client(fake_app):
    return fake_app.test_client()


@pytest.fixture(scope="session")
def fake_server(fake_seed_index_dir):
    """A `qa serve` of the hash-built seed index for the whole session, for tests that only read."""
    with serve(fake_seed_index_dir) as base:
        yield base


# --- the real model: one session index, its app and its server (tests marked `slow`) -------------------------

@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 (PyTorch), loaded once per test session."""
    from qa.embed import load_embedder

    return load_embedder(None, "torch")


@pytest.fixture(scope="session")
def seed_index_dir(tmp_path_factory, embedder):
    """The seed article built with the real model in a temporary folder (never the repo's index/)."""
    from qa.index import build_index

    path = str(tmp_path_factory.mktemp("seed") / "index")
    build_index([SEEDS], path, embedder=embedder)
    return path


@pytest.fixture(scope="session")
def squad_small_index_dir(tmp_path_factory, embedder):
    """eval/squad-small built with the real model (FAISS)."""
    from qa.index import build_index

    path = str(tmp_path_factory.mktemp("squad-small") / "index")
    build_index([os.path.join(SQUAD_SMALL, "articles.jsonl")], path, embedder=embedder)
    return path


@pytest.fixture(scope="session")
def app(seed_index_dir, embedder):
    """The Flask app on the real-model seed index."""
    return make_app(seed_index_dir, embedder)


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def seed_server(seed_index_dir):
    """A `qa serve` of the real-model seed index for the whole session, for tests that only read."""
    with serve(seed_index_dir) as base:
        yield base


# --- two small articles, built with the fake embedder ---------------------------------------------------------

ARTS = [
    {"id": "a1", "title": "Harbour strike", "source": "Wire", "published": "2024-01-05",
     "paragraphs": ["Dock workers at the harbour walked out over pay on Monday morning.",
                    "The union leader Marta Quist said talks would resume on Friday."]},
    {"id": "a2", "title": "Rail fares", "source": "Gazette", "published": "2024-03-01",
     "paragraphs": ["Rail fares will rise by four percent in March, the operator said.",
                    "Commuter groups called the increase unfair to workers on low pay."]},
]


@pytest.fixture()
def corpus(tmp_path):
    """Two small articles (ARTS) as a JSON Lines file."""
    path = tmp_path / "arts.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in ARTS))
    return str(path)


@pytest.fixture()
def built(tmp_path, corpus, fake_embedder):
    """ARTS built with the fake embedder in a temporary index folder."""
    from qa.index import build_index

    idx = str(tmp_path / "index")
    build_index([corpus], idx, embedder=fake_embedder)
    return idx


COLLECTION_OUTLETS = ("Reuters", "Associated Press", "BBC News")


def collection_articles(n: int = 120) -> list[dict]:
    """`n` small articles over three outlets (and a few without one), dated one a day back from 2024-06-30, plus
    two hostile ones: markup in the title and author, a `javascript:` URL, an id with a slash, `?` and `#`."""
    import datetime as dt

    day0 = dt.date(2024, 6, 30)
    topics = ("harbour bridge", "wheat harvest", "rail strike", "solar farm", "city budget", "flood defences")
    out = []
    for i in range(n):
        topic = topics[i % len(topics)]
        outlet = COLLECTION_OUTLETS[i % 3] if i % 10 != 9 else None
        out.append({
            "id": f"c{i:03d}", "title": f"Report {i:03d} on the {topic}",
            "paragraphs": [f"The {topic} story number {i} begins with a meeting of the council on a wet morning.",
                           f"Officials said the {topic} would cost more than planned, and work will resume next "
                           f"month after talks with the unions. Residents asked for a public hearing.",
                           f"A spokesperson declined to comment further on report {i}."],
            **({"source": outlet} if outlet else {}),
            **({"published": (day0 - dt.timedelta(days=i)).isoformat()} if i % 17 != 16 else {}),
            "url": f"https://news.example/{i}", "author": f"Writer {i % 7}"})
    out.append({"id": "odd/id?x=1#frag", "title": "<img src=x onerror=alert(1)> Harbour bridge & the \"tolls\"",
                "paragraphs": ["The harbour bridge tolls <b>rise</b> in July, the operator said on Monday.",
                               "Drivers <script>alert(2)</script> complained about the harbour bridge queues."],
                "source": "BBC News", "author": "<i>Mallory</i>", "published": "2023-01-02",
                "url": "javascript:alert(3)"})
    return out


@pytest.fixture(scope="session")
def collection_index_dir(tmp_path_factory):
    """An index of `collection_articles()` built with the fake embedder (fast): outlets, dates, pages of 50."""
    import json

    from qa.embed import HashEmbedder
    from qa.index import build_index

    folder = tmp_path_factory.mktemp("collection")
    source = folder / "articles.jsonl"
    source.write_text("".join(json.dumps(a) + "\n" for a in collection_articles()))
    path = str(folder / "index")
    build_index([str(source)], path, embedder=HashEmbedder())
    return path


@pytest.fixture(scope="session")
def collection_app(collection_index_dir):
    """The app over the collection index, with its own (fake-embedder) engine."""
    from qa.config import Config
    from qa.embed import HashEmbedder
    from qa.service import Engine
    from qa.web import create_app

    engine = Engine(Config(index_dir=collection_index_dir), embedder=HashEmbedder())
    return create_app(engine.config, engine=engine)
