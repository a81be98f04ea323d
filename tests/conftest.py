"""Fixtures: a fake embedder for fast unit tests, and indexes built with the real, local model."""
from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "seeds")
SEED_FILE = os.path.join(SEEDS, "000_17ba8289838f2219.txt")
SQUAD = os.path.join(ROOT, "eval", "squad-dev")
SQUAD_SMALL = os.path.join(ROOT, "eval", "squad-small")


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 (PyTorch), loaded once per test session."""
    from qa.embed import load_embedder

    return load_embedder(None, "torch")


@pytest.fixture()
def fake_embedder():
    from qa.embed import HashEmbedder

    return HashEmbedder()


@pytest.fixture(scope="session")
def seed_index_dir(tmp_path_factory, embedder):
    """The seed article built with the real model in a temporary folder (never the repo's index/)."""
    from qa.index import build_index

    path = str(tmp_path_factory.mktemp("seed") / "index")
    build_index([SEEDS], path, embedder=embedder)
    return path


@pytest.fixture(scope="session")
def seed_engine(seed_index_dir, embedder):
    from qa.config import Config
    from qa.service import Engine

    return Engine(Config(index_dir=seed_index_dir), embedder=embedder)


@pytest.fixture(scope="session")
def app(seed_engine):
    from qa.web import create_app

    return create_app(seed_engine.config, engine=seed_engine)


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def seed_copy(tmp_path, seed_index_dir):
    """A private copy of the seed index, for tests that write to it."""
    dst = tmp_path / "index"
    shutil.copytree(seed_index_dir, dst, ignore=shutil.ignore_patterns(".write.lock"))
    return str(dst)


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
