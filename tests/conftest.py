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
